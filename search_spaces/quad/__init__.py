"""QUAD: many LoRA adapters as runtime inputs of one shared, quantised graph.

* :mod:`.lora` -- LoRA whose A/B tensors are call arguments (graph inputs once
  exported), for any ``nn.Module`` (Linear and non-grouped Conv2d layers).
* :mod:`.quant` -- torch fake-quant simulation with swappable profiles (one
  shared profile for every task), encodings files, QUAD quantisation-aware
  training with distillation, and the ONNX QDQ export.
* :mod:`.space` -- the ``quad`` search space over hybrid_unet: LoRA rank and
  bit widths per block.
"""
