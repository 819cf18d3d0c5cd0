"""The `imageclf` command's launchers: `run` (the whole service on one host, with an embedded Redis when
REDIS_URL is unset), `start_workers` (the model workers, one per GPU, and the decoders), `supervise` (restart
what dies), `redis_server`, `add_model` (check and copy a model into the repository) and `service_process`
(the service as a child process, for tests and benchmarks)."""
