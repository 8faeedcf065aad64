"""Label Studio's side of the boundary: its label config read as a project schema (``config``), its JSON read
into checked records (``records``), regions <-> pixel boxes (``regions``), its API (``client``) and the sync of a
project into the store (``sync``)."""
