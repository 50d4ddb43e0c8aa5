#!/usr/bin/env bash
# One line naming the CPU and its vector instruction sets, printed by every benchmark so that each
# figure is recorded with the machine it ran on.
model=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs)
family=$(grep -m1 '^cpu family' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs)
# The model number tells generations apart when the name does not (AMD family 25:
# Zen 3 = models 0-15, 32-47, 64-95; Zen 4 = 16-31, 96 and up; family 26: Zen 5).
cpumodel=$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs)
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -xE 'sse4_2|avx|avx2|fma|avx512f|avx512bw|avx512vl|avx512_bf16|avx_vnni|avx512_vnni' | tr '\n' ' ')
[ -z "$model" ] && model=$(uname -m)
echo "CPU: ${model:-unknown} (family ${family:-?} model ${cpumodel:-?}), $(nproc) cores; vector flags: ${flags:-none (not x86-64)}"
