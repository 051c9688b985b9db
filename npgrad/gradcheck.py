"""Finite-difference gradient checks and Jacobians."""


class GradcheckError(AssertionError):
    pass


def gradcheck(*a, **k):
    raise NotImplementedError


def jacobian(*a, **k):
    raise NotImplementedError


def numerical_jacobian(*a, **k):
    raise NotImplementedError
