"""The image tower's user-facing settings: how many views of a photo the locked tower sees."""

from __future__ import annotations

# Each choice is a set of fixed, deterministic views whose raw embeddings are averaged into one embedding. The
# tower stays locked; only what it is shown changes. "whole photo": the centre crop, its mirror image, the two end
# squares along the long side and the whole photo resized to a square, so nothing outside the centre square is
# lost (a centre crop drops a quarter of a 4:3 photo, often what its captions name). Measured on Flickr8k
# (bench/README.md, 2026-12-02): the closed-form head's dev mean R@5 15.6 -> 20.0 (8 seeds), held out 15.2 ->
# 17.3-18.7, for 5x the tower's time (paid once per photo where embeddings are cached).
VIEWS = {"centre crop": 1, "whole photo": 5}
DEFAULT_VIEWS = "centre crop"
VIEWS_TOOLTIP = ("What the locked tower sees of each photo. 'centre crop' (its training preprocessing) is one pass; "
                 "'whole photo' averages 5 fixed views (centre crop, its mirror, both end squares, the whole photo "
                 "squashed) so the sides are seen too: better retrieval (Flickr8k held-out R@5 about +2 to +3 "
                 "points) for 5x the tower's time. An adapter must be used with the views it was trained on.")
