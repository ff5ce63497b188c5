"""``sd_unet``: Stable Diffusion U-Net/VAE surgery (TOC-SR, NanoSD); see docs/sd.md."""

import logging as _logging

# diffusers imports torchao where it is installed (executorch brings it), and torchao,
# torch and diffusers then warn about torchao's own compiled extensions, which nothing
# here uses: keep their errors, drop that chatter
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
