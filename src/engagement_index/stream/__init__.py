"""The streaming worker: thin I/O around the pure core (Faust app, agent, tables, timer, web)."""
