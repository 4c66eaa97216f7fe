"""OpenAI's Files and Batch API: uploads, batches run on the batch-tier deployments, their output files."""
