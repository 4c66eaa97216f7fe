"""Pulumi entry point: load the stack's config and build the platform."""
from infra.config import from_pulumi
from infra.platform import Platform

Platform("llm-platform", from_pulumi())
