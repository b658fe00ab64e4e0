"""`medsd ui`: an interactive web page over medsd's own generation code (gradio, an optional extra).

`catalog` finds models, adapters and reports on disk; `service` runs medsd's generate / interpolate /
inpaint functions and reads back the PNGs they wrote; `judge` scores them; `handlers` and `app` are the
page; `server` serves it offline; `cli` is the command. Only `handlers`, `app` and `server.launch` import
gradio.
"""
