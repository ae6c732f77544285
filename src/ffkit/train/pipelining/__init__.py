"""The parts of a pipeline of FF stages, split as ``torch.distributed.pipelining`` splits its own:

* :mod:`.stage`: one stage's layers and its local update (and its part of a layer shared with a neighbour);
* :mod:`.schedule`: how batches move through the stages (threads of one process, or one process per stage);
* :mod:`.transport`: the point-to-point channels between ranks (devices, shapes, timeouts; nothing of a trainer);
* :mod:`.partition`: how many stages, and which layers two stages may share (the cuts themselves are
  :mod:`ffkit.train.balance`'s);
* :mod:`.files`: each stage's checkpoint file.

:class:`ffkit.train.PipelineTrainer` splits the network, places the stages, runs a schedule each epoch and keeps the
records and checkpoints.
"""
