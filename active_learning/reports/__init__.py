"""What the loop tells people: how annotators corrected each version's boxes (``corrections``) and the status
of every project (``status``)."""
