"""``sd_unet``: Stable Diffusion U-Net/VAE surgery (TOC-SR, NanoSD); see docs/sd.md."""
