"""``escnet serve``: an HTTP API and a web page for a trained model (``pip install
'escnet[serve]'``). The application is :func:`escnet.serve.app.create_app`."""
