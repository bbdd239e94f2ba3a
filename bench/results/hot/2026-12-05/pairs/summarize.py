import csv,sys,glob,statistics as st,os
d=sys.argv[1]
rows={}
for f in sorted(glob.glob(d+'/*/compare.csv')):
    which=os.path.basename(os.path.dirname(f)).rsplit('-',1)[0]
    for r in csv.DictReader(open(f)):
        k=(r['scenario'],r['logs'],which)
        rows.setdefault(k,[]).append((float(r['req_per_s']),float(r['p99_ms']),float(r['server_cpu_us_per_req']),int(r['errors'])+int(r['bad_status'])+int(r['corrupt'])))
print("| scenario | logs | binary | req/s median (range) | p99 ms median | server CPU µs/req median (range) | failed |")
print("|---|---|---|---|---|---|---|")
for k in sorted(rows):
    v=rows[k]
    rps=[x[0] for x in v]; p99=[x[1] for x in v]; cpu=[x[2] for x in v]
    print(f"| {k[0]} | {k[1]} | {k[2]} | {st.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) | {st.median(p99):.2f} | {st.median(cpu):.1f} ({min(cpu):.1f}–{max(cpu):.1f}) | {sum(x[3] for x in v)} |")
