"""Coordination between nodes that share one bucket (docs/shared-stores.md).

The store talks to other nodes through one interface, :class:`~streamlib.shared.coordination.
Coordination`, chosen by the metadata's ``capabilities.shared``: a store of one node
(:class:`~streamlib.shared.coordination.LocalCoordination`) acknowledges at once and has no
owners; a shared one (:class:`~streamlib.shared.fencing.SharedCoordination`) gates
acknowledgements on a look at the metadata, follows other nodes' commits and hands streams over
(the state machine of :mod:`streamlib.shared.handover`). :mod:`streamlib.shared.takeover`
recovers a dead node.
"""
