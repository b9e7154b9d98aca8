"""The only place detectron2 (det*.py, vitdet_convert.py) and mmsegmentation (seg*.py, mmseg_env.py) are imported."""
