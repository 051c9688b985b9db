"""Process-wide switches: whether operations record a graph. (The kernel backend lives in kernels/.)"""

grad_enabled = True
