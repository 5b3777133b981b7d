"""The PyTorch reference's image preprocessing (models/training/gill_tiny/gill.py load_image) with PIL:
alpha onto white, shortest side to SIZE bicubic (long side rounded), centre crop. Writes raw RGB bytes.
Usage: /usr/bin/python3 test/support/pil_preprocess.py IMAGE SIZE"""
import sys, numpy as np
from PIL import Image
size=int(sys.argv[2])
with Image.open(sys.argv[1]) as im:
    im.load(); rgba=im.convert("RGBA")
rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,255,255,255)), rgba).convert("RGB")
w,h=rgb.size; s=size/min(w,h)
rgb=rgb.resize((max(size, round(w*s)), max(size, round(h*s))), Image.BICUBIC)
w,h=rgb.size; left,top=(w-size)//2,(h-size)//2
a=np.asarray(rgb.crop((left,top,left+size,top+size)),dtype=np.uint8)
sys.stdout.buffer.write(a.tobytes())
