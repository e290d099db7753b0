# Renders the study's CSV (written by ssmax_study) as PNG plots, next to the CSV.
#   gnuplot -e "dir='out/study'" bench/study/plots.gp
# figure1.png, needle_weight.png, needle_entropy.png, margin.png and, when the
# performance sweep ran, bench.png. Files that are missing are skipped.

if (!exists("dir")) dir = "out/study"
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 900,600 font ",11" linewidth 1.5
} else {
  set terminal png size 900,600 linewidth 2
}
set datafile separator comma
set datafile missing "NaN"
set grid
set key left bottom box opaque
set logscale x 10
set format x "10^{%L}"
set mxtics 10
exists_file(f) = system("test -f '" . f . "' && echo 1 || echo 0") + 0

# --- 1: the paper's Figure 1 ---------------------------------------------------------------
f = dir . "/figure1.csv"
if (exists_file(f)) {
  set output dir . "/figure1.png"
  set title "Figure 1: largest output for x = [-2, ..., -2, +3] of size n (s = 0.43)"
  set xlabel "n (input size)"
  set ylabel "largest output"
  set yrange [0:1.05]
  plot f using 1:5 with lines lw 2 lc rgb "#9ecae1" title "SSMax closed form", \
       f using 1:3 with points pt 7 ps 0.8 lc rgb "#1f77b4" title "SSMax (library, float)", \
       f using 1:4 with lines lw 2 lc rgb "#fcbba1" title "Softmax closed form", \
       f using 1:2 with points pt 5 ps 0.8 lc rgb "#d62728" title "Softmax (library, float)"
  unset output
  set yrange [*:*]
}

# --- 2: the needle through the attention operator ------------------------------------------
f = dir . "/needle_weight.csv"
if (exists_file(f)) {
  stats f skip 1 nooutput
  policies = int((STATS_columns - 1) / 3)
  stats f using 1 skip 1 nooutput
  set xrange [STATS_min / 1.5 : STATS_max * 1.5]
  set output dir . "/needle_weight.png"
  set title "Weight on the needle vs context length (multi-head operator, causal)\n{/*0.8 points: mean over query rows and needle depths; bars: their range}"
  set xlabel "n_k (keys in the context)"
  set ylabel "attention weight on the needle"
  set logscale y 10
  set format y "10^{%L}"
  set key left bottom
  plot for [i=0:policies-1] f using 1:(column(2+3*i)):(column(3+3*i)):(column(4+3*i)) \
       with yerrorlines pt 7 ps 0.6 lc (i + 1) title columnhead(2+3*i) noenhanced
  unset output
  unset logscale y
  set format y "%g"
}
f = dir . "/needle_entropy.csv"
if (exists_file(f)) {
  stats f skip 1 nooutput
  last = STATS_columns
  stats f using 1 skip 1 nooutput
  set xrange [STATS_min / 1.5 : STATS_max * 1.5]
  set output dir . "/needle_entropy.png"
  set title "Entropy of the attention rows vs context length (log n: a uniform row)"
  set xlabel "n_k (keys in the context)"
  set ylabel "entropy (nats)"
  set key left top
  plot f using 1:2 with lines dt 2 lc rgb "gray40" title "log n (uniform)", \
       for [i=3:last] f using 1:i with linespoints pt 7 ps 0.6 lc (i - 2) title columnhead(i) noenhanced
  unset output
  set xrange [*:*]
}

# --- 3: the view of Figure 3 ---------------------------------------------------------------
f = dir . "/margin.csv"
if (exists_file(f)) {
  stats f skip 1 nooutput
  policies = int((STATS_columns - 1) / 2)
  set output dir . "/margin.png"
  set title "Margin a key needs over n - 1 equal keys to get half of the attention"
  set xlabel "n (keys in the row)"
  set ylabel "margin D (logit units)"
  set key left top
  plot for [i=1:policies] f using 1:(column(2*i)) with points pt 7 ps 0.7 lc i \
         title columnhead(2*i) . " (library)" noenhanced, \
       for [i=1:policies] f using 1:(column(2*i+1)) with lines dt 2 lc i \
         title (i == 1 ? "closed forms log(n-1)/m" : "")
  unset output
}

# --- 4: the performance sweep --------------------------------------------------------------
f = dir . "/bench_time.csv"
g = dir . "/bench_rate.csv"
if (exists_file(f) && exists_file(g)) {
  stats f skip 1 nooutput
  last = STATS_columns
  subtitle = system("head -n 1 '" . dir . "/bench_title.txt'")
  rate_name = system("sed -n 2p '" . dir . "/bench_title.txt'")
  set output dir . "/bench.png"
  set multiplot layout 1,2 title "Performance across context lengths: Softmax vs SSMax\n" . subtitle noenhanced
  set key right bottom font ",9" noenhanced
  set title "time per call"
  set xlabel "n (context length)"
  set ylabel "microseconds"
  set logscale y 10
  set format y "10^{%L}"
  plot for [i=2:last] f using 1:i with linespoints pt 7 ps 0.6 lc (i - 1) title columnhead(i)
  set title "throughput"
  set ylabel rate_name
  set format y "%g"
  unset key
  plot for [i=2:last] g using 1:i with linespoints pt 7 ps 0.6 lc (i - 1) title columnhead(i)
  unset multiplot
  unset output
  unset logscale y
}
