"""Compiled kernels (Cython).  Import them through the validating wrappers in
``pystitch.resolve``, ``pystitch.relabel``, ``pystitch.faces`` and
``pystitch.regions``; the functions here trust their arguments."""
