# The image `cargo xtask image` builds: the static binary it just built, in an
# empty image. (The repository's Dockerfile builds the binary itself.)
FROM scratch
COPY sonde /sonde
ENTRYPOINT ["/sonde"]
CMD ["run"]
