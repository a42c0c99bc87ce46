"""Archives of your own recordings: index hours of unlabelled audio (:mod:`.index`), search it
by example (:mod:`.search`), label what you hear (:mod:`.db`, :mod:`.labels`), learn a
classifier in seconds and rank the next windows to label, scan the whole archive with it
(:mod:`.learn`). The store is :mod:`.db`; nearest neighbours, :mod:`.vectors`."""
