"""Shared diffusion math: schedules, preconditioning, parameterizations, samplers, guidance."""
