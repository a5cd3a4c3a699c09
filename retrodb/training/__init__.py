"""The bundled RETRO model and its training, evaluation and sampling.

    model/      decoder, chunked cross-attention, neighbour encoder; presets
    sequences   training windows (consecutive chunks of one document) + neighbours
    train       the trainer (exact resume, DDP under torchrun)
    evaluate    loss and bits per byte with, without and with leakage-filtered retrieval
    generate    chunk-by-chunk sampling with live retrieval
    checkpoint  safetensors + JSON checkpoints, no pickle
    runs        a run's directory: config, metrics, latest weights
    device      torch devices, autocast, batches on the device
    plot        training curves to PNG
"""
