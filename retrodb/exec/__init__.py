"""How shard work runs: the Stage protocol, the one runner, the executors.

    stage      the Stage protocol, Task, the worker's Outputs and WorkerEnv
    runner     run_stage(): pending shards → executor → publish → manifest; resume
    executors  in process, a local process pool (one per GPU with --gpus), Ray
    worker     the worker side: one process's environment and opened stage workers
"""
