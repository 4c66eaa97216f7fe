"""llm-platform infrastructure: the Pulumi program, its config, policies and offline plan."""
