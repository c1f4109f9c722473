"""Built-in workloads, one file each; the engine finds them by name (``stress list``)."""
