"""The platform's building blocks: one Pulumi ComponentResource per concept."""
