"""Adapters on the frozen DiT: which LoRA files do Anima users run, and what do they do beside guidance?

`names` maps the published MiniTrainDIT module names to our in-memory diffusers ones; `lora` reads and writes
the LoRA formats users have (kohya / ComfyUI / diffusion-pipe / diffusers-peft); `apply` puts a LoRA on the DiT
and takes it off again without touching a base weight; `tlora` and `hydra` are the two variants the proposal names
(timestep rank mask, routed up-heads); `train` teaches the toy model a 13th artist and `evaluate` measures it.
"""
