"""What crosses the wire per API: OpenAI's and Anthropic's requests, answers and streams, and translations."""
