"""WhatsApp Cloud API simulator: plays Meta (webhooks and Graph API) for waflow's tests and benchmarks."""
