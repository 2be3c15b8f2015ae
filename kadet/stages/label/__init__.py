"""The label stage: the teachers (kadet.stages.label.teachers) and the stage itself
(kadet.stages.label.stage: score, filter, cut, normalise, split)."""
