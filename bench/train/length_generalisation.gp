# Plots the CSV of ssmax_length_generalisation (bench/train/length_generalisation.cpp):
#   gnuplot -e "csv='length_generalisation.csv'; png='docs/figures/length_generalisation.png'" \
#           bench/train/length_generalisation.gp
if (!exists("csv")) csv = 'length_generalisation.csv'
if (!exists("png")) png = 'length_generalisation.png'
set terminal pngcairo size 1100,420 font ",10"
set output png
set datafile separator ","
set multiplot layout 1,2 title "Key-value retrieval, trained at the first length: Softmax vs SSMax"
set logscale x 2
set xlabel "context length (tokens)"
set key bottom left
set grid
set yrange [0:1.05]
set ylabel "retrieval accuracy"
plot csv using 2:(strcol(1) eq "softmax" ? $4 : 1/0) with linespoints lw 2 title "Softmax", \
     csv using 2:(strcol(1) eq "ssmax(s)" ? $4 : 1/0) with linespoints lw 2 title "SSMax, learned s", \
     csv using 2:(strcol(1) eq "ssmax(s,b)" ? $4 : 1/0) with linespoints lw 2 dt 2 pt 6 ps 1.5 title "SSMax, learned s and b (dashed)"
set ylabel "attention weight on the needle (best head)"
plot csv using 2:(strcol(1) eq "softmax" ? $5 : 1/0) with linespoints lw 2 title "Softmax", \
     csv using 2:(strcol(1) eq "ssmax(s)" ? $5 : 1/0) with linespoints lw 2 title "SSMax, learned s", \
     csv using 2:(strcol(1) eq "ssmax(s,b)" ? $5 : 1/0) with linespoints lw 2 dt 2 pt 6 ps 1.5 title "SSMax, learned s and b (dashed)"
unset multiplot
