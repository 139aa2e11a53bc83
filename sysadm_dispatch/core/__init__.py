"""The domain: jobs, queues, events and the dispatcher that runs them."""
