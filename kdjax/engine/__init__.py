"""The engine: members trained in compiled programs on a device mesh (`train_members`), and its parts.

`members` (who trains: `Member`, results), `step` (the jitted program step), `evaluate`,
`memory` (how many members fit) and `loop` (epochs, checkpoints, progress). A single run is a
one-member program; a teacher is trained by the same loop.
"""

from kdjax.engine.evaluate import evaluate_members, model_variables
from kdjax.engine.loop import InterruptGuard, TrainingDivergedError, train_members, train_program
from kdjax.engine.members import (Member, MemberResult, ProgramResult, data_groups, expand_members, program_name,
                                  programs, reads_teacher, stack_hyperparameters)
from kdjax.engine.memory import MemoryPlan, ProgramMemoryError, plan_program_size
from kdjax.engine.step import ProgramSpec, augment_views, init_states, map_members, program_step, unrolls
from kdjax.train import AUGMENTATIONS, MEMBER_BATCHING, Settings

__all__ = ["AUGMENTATIONS", "MEMBER_BATCHING", "InterruptGuard", "Member", "MemberResult", "MemoryPlan",
           "ProgramMemoryError", "ProgramResult", "ProgramSpec", "Settings", "TrainingDivergedError",
           "augment_views", "data_groups", "evaluate_members", "expand_members", "init_states", "map_members",
           "model_variables", "plan_program_size", "program_name", "program_step", "programs", "reads_teacher",
           "stack_hyperparameters", "train_members", "train_program", "unrolls"]
