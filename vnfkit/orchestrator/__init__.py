"""The orchestrator: hosts' agents register with it; it places services, compiles their paths,
applies them on every host in two phases and collects the counters the agents stream back."""
