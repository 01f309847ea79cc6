"""Serving: the Ray Serve application (FastAPI ingress -> batching generator deployment) and its HTTP schema.

serve run configs/serve_tiny.yaml
python jobs/serve.py --checkpoint outputs/tiny/pretrain/tiny/ray/<run>/checkpoint_*/model
"""
