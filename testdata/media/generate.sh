#!/usr/bin/env bash
# Regenerates the synthetic test media in this directory.
#
# Source: ffmpeg lavfi testsrc2 (1280x720, 30 fps) + sine (440 Hz), 10 s.
# Entirely synthetic: no third-party footage or audio.
#
# Outputs (written next to this script, whatever the cwd):
#   demo.mp4            H.264 High@3.1 + AAC-LC, faststart, 2 s GOP
#   demo.webm           VP9 + Opus
#   demo/index.m3u8     HLS VOD media playlist, fMP4 (init.mp4 + seg_000..004.m4s)
#   demo/master.m3u8    HLS master playlist referencing index.m3u8
#
# Requires: ffmpeg (libx264, libvpx-vp9, libopus, aac), ffprobe, awk, od, grep.
set -euo pipefail

OUT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HLS_DIR="$OUT_DIR/demo"

DURATION=10
FPS=30
GOP=$((FPS * 2))      # 2 s keyframe interval == HLS segment duration
SEG_SECONDS=2

for tool in ffmpeg ffprobe awk od grep; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool not found in PATH" >&2; exit 1; }
done

# Synthetic inputs.
SRC=(
  -f lavfi -i "testsrc2=size=1280x720:rate=${FPS}:duration=${DURATION}"
  -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=${DURATION}"
)

# Flags that keep the output free of timestamps / version strings where ffmpeg allows.
DETERMINISTIC=(
  -fflags +bitexact -flags:v +bitexact -flags:a +bitexact
  -map_metadata -1 -map_chapters -1
)

# H.264 settings shared by demo.mp4 and the HLS rendition.
H264=(
  -c:v libx264 -pix_fmt yuv420p -profile:v high -level:v 3.1 -preset medium
  -b:v 1500k -maxrate 2000k -bufsize 3000k
  -g "$GOP" -keyint_min "$GOP" -sc_threshold 0
  -force_key_frames "expr:gte(t,n_forced*${SEG_SECONDS})"
  -x264-params "open-gop=0"
  # Single-threaded: multi-threaded x264 with VBV is not run-to-run reproducible.
  -threads 1
)
AAC=(-c:a aac -b:a 128k -ac 2 -ar 48000)

FFMPEG=(ffmpeg -hide_banner -loglevel error -nostdin -y)

ffmpeg_version="$(ffmpeg -version)"
echo "ffmpeg: ${ffmpeg_version%%$'\n'*}"

# --- demo.mp4 -------------------------------------------------------------
echo "writing demo.mp4"
"${FFMPEG[@]}" "${SRC[@]}" \
  -map 0:v:0 -map 1:a:0 -t "$DURATION" \
  "${H264[@]}" "${AAC[@]}" \
  "${DETERMINISTIC[@]}" \
  -movflags +faststart \
  "$OUT_DIR/demo.mp4"

# --- demo.webm ------------------------------------------------------------
echo "writing demo.webm"
"${FFMPEG[@]}" "${SRC[@]}" \
  -map 0:v:0 -map 1:a:0 -t "$DURATION" \
  -c:v libvpx-vp9 -pix_fmt yuv420p -b:v 600k -deadline realtime -cpu-used 8 \
  -row-mt 0 -threads 1 -g "$GOP" -keyint_min "$GOP" \
  -c:a libopus -b:a 96k -ac 2 -ar 48000 \
  "${DETERMINISTIC[@]}" \
  "$OUT_DIR/demo.webm"

# --- demo/ (HLS, fMP4) ----------------------------------------------------
echo "writing demo/index.m3u8 + segments"
rm -rf "$HLS_DIR"
mkdir -p "$HLS_DIR"
(
  cd "$HLS_DIR"
  "${FFMPEG[@]}" "${SRC[@]}" \
    -map 0:v:0 -map 1:a:0 -t "$DURATION" \
    "${H264[@]}" "${AAC[@]}" \
    "${DETERMINISTIC[@]}" \
    -f hls -hls_time "$SEG_SECONDS" -hls_playlist_type vod -hls_list_size 0 \
    -hls_segment_type fmp4 -hls_fmp4_init_filename init.mp4 \
    -hls_segment_filename "seg_%03d.m4s" \
    -hls_flags independent_segments \
    index.m3u8
)

# --- demo/master.m3u8 -----------------------------------------------------
# CODECS: avc1.PPCCLL read from the avcC box of init.mp4 (profile, constraint
# flags, level), plus mp4a.40.2 (AAC-LC).
avcc_off=$(LC_ALL=C grep -m1 -obUa 'avcC' "$HLS_DIR/init.mp4" | cut -d: -f1)
avcc_off="${avcc_off%%$'\n'*}"   # first match only
[[ -n "$avcc_off" ]] || { echo "error: avcC box not found in init.mp4" >&2; exit 1; }
# avcC payload: configurationVersion(1) profile(1) compat(1) level(1)
avc_hex=$(od -An -tx1 -j $((avcc_off + 5)) -N3 "$HLS_DIR/init.mp4" | tr -d ' \n')
aac_profile=$(ffprobe -v error -select_streams a:0 -show_entries stream=profile -of csv=p=0 "$HLS_DIR/index.m3u8")
aac_profile="${aac_profile%%$'\n'*}"   # hls demuxer lists each stream twice (program + streams)
[[ "$aac_profile" == "LC" ]] || { echo "error: unexpected AAC profile '$aac_profile'" >&2; exit 1; }
CODECS="avc1.${avc_hex},mp4a.40.2"

width=$(ffprobe -v error -select_streams v:0 -show_entries stream=width -of csv=p=0 "$HLS_DIR/init.mp4")
height=$(ffprobe -v error -select_streams v:0 -show_entries stream=height -of csv=p=0 "$HLS_DIR/init.mp4")

# BANDWIDTH = peak segment bitrate (segment + init bytes), AVERAGE-BANDWIDTH = mean.
init_bytes=$(wc -c < "$HLS_DIR/init.mp4")
read -r peak_bw avg_bw < <(
  awk -v dir="$HLS_DIR" -v init="$init_bytes" '
    /^#EXTINF:/ { sub(/^#EXTINF:/, ""); sub(/,.*/, ""); dur = $0 + 0; next }
    /^[^#]/ && NF {
      cmd = "wc -c < \"" dir "/" $0 "\""; cmd | getline bytes; close(cmd)
      bw = (bytes + init) * 8 / dur; if (bw > peak) peak = bw
      total_bytes += bytes; total_dur += dur
    }
    END { printf "%d %d\n", peak + 0.5, (total_bytes + init) * 8 / total_dur + 0.5 }
  ' "$HLS_DIR/index.m3u8"
)

cat > "$HLS_DIR/master.m3u8" <<M3U8
#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-STREAM-INF:BANDWIDTH=${peak_bw},AVERAGE-BANDWIDTH=${avg_bw},RESOLUTION=${width}x${height},FRAME-RATE=${FPS}.000,CODECS="${CODECS}"
index.m3u8
M3U8

echo "CODECS=${CODECS}"
echo "done:"
(cd "$OUT_DIR" && ls -l demo.mp4 demo.webm demo/)
