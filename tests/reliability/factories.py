"""Factories for `--model tests.reliability.factories:NAME`: the ways a user's factory
can be wrong, and one small structured model that is right."""
import torch

not_callable = 42


def raises():
    raise ValueError("weights file not found")


def returns_int():
    return 3


def returns_one_tuple():
    return (torch.nn.Conv2d(3, 4, 3),)


def returns_four_tuple():
    return torch.nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), [], None


def returns_non_module_first():
    return "model", (torch.randn(1, 3, 8, 8),)


def returns_bare_example():
    return torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)


def returns_bad_checks():
    return torch.nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), [torch.randn(1, 3, 8, 8)]


def structured():
    """A conv taking one tensor: a structured (non-detector) artifact."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    return model, (torch.randn(1, 3, 16, 16),), [(torch.randn(2, 3, 20, 24),)]


def bare_conv():
    """A module that does not take the zoo's list of dicts."""
    return torch.nn.Conv2d(3, 4, 3)
