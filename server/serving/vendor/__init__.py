"""Request logic of the vendor adapters, over the same engines, tasks and accounts as /v3."""
