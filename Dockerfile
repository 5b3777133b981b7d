# The app image for compose.yaml: every role (`gill start | bot | worker | migrate | doctor`) from one image.
FROM node:20-bookworm-slim

WORKDIR /app
# npm 11 honours package.json's allowScripts: esbuild and msgpackr-extract run their install scripts,
# onnxruntime-node's (which would download CUDA binaries) does not.
RUN npm install -g npm@11.19.1
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force

COPY bin ./bin
COPY src ./src
COPY migrations ./migrations
COPY tsconfig.json ./
COPY models/gill-tiny ./models/gill-tiny

# Not root: the app needs no privileges, and a compromise stays inside this user's files.
RUN useradd --system --create-home --home-dir /home/gill gill && mkdir -p /app/.gill && chown gill /app/.gill
USER gill
ENV NODE_ENV=production

# 7860 playground (`gill start`), 9464 bot metrics, 9465 worker metrics.
EXPOSE 7860 9464 9465
ENTRYPOINT ["node", "bin/gill.mjs"]
CMD ["start"]
