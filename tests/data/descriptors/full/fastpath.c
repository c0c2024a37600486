/* Placeholder: descriptor tests fake the introspection of the compiled object. */
#include <vnfkit.h>
