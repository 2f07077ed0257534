"""What runs while a model samples: gates, the per-run cache, policies, module proxies, the report."""
