"""hetdiff: heterogeneous decentralized diffusion models.

K experts, each trained alone on one cluster of the data with its own objective (DDPM with any
schedule and prediction type, or flow matching), meet in one velocity space at inference, weighed
by a router. Time convention everywhere: t in [0, 1], t = 0 data, t = 1 noise,
x_t = (1 - t) x0 + t eps, velocity v = eps - x0.
"""

__version__ = "0.1.0"
