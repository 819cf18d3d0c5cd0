"""Jobs and the decoders that run them: the job's driver (`driver`: cut into chunks, windows, collect, finish),
a chunk decoded and sent to the model in parts (`chunks`), the job's records in Redis and files on disk
(`store`), its result (`results`, `result_bodies`), webhooks (`webhooks`, `webhook_targets`) and the decoder's
process hooks (`process`). The API imports `store` and `result_bodies` to create and read jobs."""
