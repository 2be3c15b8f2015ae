"""Stage 5, distill: train the embedding model on the teacher's labels.

Loss (``kadet.stages.distill.losses``): listwise KL from the teacher's scores plus 0.1 x InfoNCE with
false-negative masking (``distill.loss=listwise``), or InfoNCE alone (``infonce``), the
paper's contrast. Every optimizer step sees ``distill.batch_size`` queries x ``list_size``
passages through GradCache (``kadet.stages.distill.gradcache``), whatever the memory: only
``distill.chunk_size`` texts are in a forward pass at a time.

Modes (``distill.mode``):

``full``   the whole model is tuned, as in the paper; the corpus must be re-indexed.
``query``  query-side tuning: the document tower is frozen, passage embeddings are computed
           once (through the embedding cache) and reused, and the existing corpus index stays
           valid. Saved as an asymmetric sentence-transformers model (a ``Router`` whose
           ``document`` route is the untouched base model), so ``SentenceTransformer(path)``
           loads it and ``encode_query`` / ``encode_document`` pick the right tower.

Start (``distill.init``): the base model (``retrieval.model``), or the registry's current champion,
falling back to the base model and saying why (:mod:`kadet.stages.distill.start`).

Loop: AdamW, warmup for half an epoch then linear decay to 0.1 x, gradient clip 1.0, dropout 0,
a checkpoint every epoch (``checkpoints/epoch-N``; rerunning resumes from the last one), early
stopping on dev loss (patience 2), bf16 autocast on CUDA, seeded. Under ``torchrun
--nproc_per_node N`` it trains data-parallel (:mod:`kadet.stages.distill.parallel`): each rank encodes 1/N of
every batch, the loss and step are the single-process ones; rank 0 writes the files. Outputs::

    model/            best model by dev loss (SentenceTransformer folder)
    curves.json       per-step train loss and lr, per-epoch dev loss
    manifest.json

Where each part lives (split the way Hugging Face's ``Trainer`` splits a trainer), in ``kadet.stages.distill.``:

================  =====================================================================================
``data``          the labels read into training and dev queries; batches of them
``start``         the student's start: base model or champion (``distill.init``); dropout off, and why
``optim``         AdamW and the learning-rate schedule
``checkpoint``    the per-epoch checkpoints: their key, save, resume
``temperature``   ``distill.auto_teacher_temp``: the teacher temperature from the data
``saving``        the final model folder (WiSE-FT, the query-side ``Router`` model)
``trainer``       :class:`Distiller`: encoding, the GradCache step, dev loss, the loop
``stage``         :func:`distill`, the stage: training, manifest and model card facts
================  =====================================================================================
"""

# the names other code imports from kadet.stages.distill (cli, steps, plan, benchmarks, tests)
from kadet.stages.distill.optim import lr_factor
from kadet.stages.distill.saving import interpolated, save_query_side_model
from kadet.stages.distill.stage import distill
from kadet.stages.distill.start import init_tags
from kadet.stages.distill.trainer import Distiller

__all__ = ["Distiller", "distill", "init_tags", "interpolated", "lr_factor", "save_query_side_model"]
