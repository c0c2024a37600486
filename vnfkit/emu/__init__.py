"""The multi-host emulator: compute hosts as network namespaces on one underlay, each with its
own agent, and client/server namespaces attached to them (``vnfkit emu up``/``down``)."""
