"""What the operator writes: the native config format, LiteLLM's, governance sections, loading a file."""
