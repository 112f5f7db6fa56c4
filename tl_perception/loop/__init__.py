"""Closing the loop: hard frames the node captured (`tl_perception.capture`) back into training.

`label` gives captured images their classes (a CSV of path,label, or files moved into class
folders by hand); `merge` adds labelled captures to an existing dataset without leakage. Both
work on dataset directories through `tl_perception.dataset` and need no ROS.
"""
