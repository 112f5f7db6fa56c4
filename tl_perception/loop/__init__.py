"""Closing the loop: hard frames the node captured back into training.

`capture` is the writer the node feeds (a bounded queue and one thread), `store` the capture
directory on disk that the writer fills and `label` and `merge` read.

`label` gives captured images their classes (a CSV of path,label, or files moved into class
folders by hand); `merge` adds labelled captures to an existing dataset without leakage. Both
work on dataset directories through `tl_perception.dataset` and need no ROS.
"""
