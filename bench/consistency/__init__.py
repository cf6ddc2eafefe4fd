"""Consistency-model math shared by the CM adapters (methods/consistency.py) and the consistency
decoder (methods/consistency_decoder.py). CARDS.md §7, §10.

- ``cm``: boundary-condition scalings, the Karras index grid, CT / iCT curricula, iCT's lognormal
  index distribution, pseudo-Huber metric, 1/Δσ weights, index lists and the multistep sampler;
- ``decoder``: VP-cosine (T = 1024) EDM-style scalings, latent normalisation, timestep rounding on
  the distilled grid, the VP Heun teacher step and the decoder's multistep sampler;
- ``latents``: pluggable latent sources (a fixed random conv encoder; the SD VAE encoder from the
  asset folder).
"""
