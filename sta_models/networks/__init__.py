"""Networks of the method: backbones, audio net, building blocks, the S/SA/ST branches (and STA)."""

from sta_models.networks.backbones import RANDOM_INIT, Backbone, WeightsError
from sta_models.networks.branches import (
    BRANCH_KINDS,
    NUM_CLASSES,
    BranchNet,
    BranchOutput,
    branch_loss,
    build_branch,
    param_groups,
    run_branch,
)

__all__ = [
    "BRANCH_KINDS", "NUM_CLASSES", "RANDOM_INIT", "Backbone", "BranchNet", "BranchOutput",
    "WeightsError", "branch_loss", "build_branch", "param_groups", "run_branch",
]
