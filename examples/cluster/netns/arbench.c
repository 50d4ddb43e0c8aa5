// Allreduce microbenchmark: same buffer as the trainer (271102 f32 = 1.08 MB), MPI_SUM.
// Each iteration: MPI_Barrier, then time one MPI_Allreduce (so rank skew is mostly removed).
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
static void bench(int n, int iters, int rank, const char*label){
  float *s=malloc(n*4),*r=malloc(n*4); for(int i=0;i<n;i++) s[i]=1.0f;
  double *t=malloc(iters*sizeof(double)); 
  for(int i=0;i<3;i++) MPI_Allreduce(s,r,n,MPI_FLOAT,MPI_SUM,MPI_COMM_WORLD);
  // rep i: barrier, then K back-to-back allreduces; per-op time = elapsed/K (each op depends on
  // the peer's data, so this is the steady-state time per allreduce incl. its latency)
  const int K=5;
  for(int i=0;i<iters;i++){ MPI_Barrier(MPI_COMM_WORLD); double t0=MPI_Wtime();
    for(int k=0;k<K;k++) MPI_Allreduce(s,r,n,MPI_FLOAT,MPI_SUM,MPI_COMM_WORLD);
    t[i]=(MPI_Wtime()-t0)*1e3/K; }
  double sum=0; for(int i=0;i<iters;i++) sum+=t[i]; qsort(t,iters,sizeof(double),cmp);
  if(rank==0) printf("%s: n=%d floats (%.3f MB) reps=%dx5  min %.3f  median %.3f  mean %.3f ms\n",
       label,n,n*4/1e6,iters,t[0],t[iters/2],sum/iters);
  free(s);free(r);free(t);
}
int main(int argc,char**argv){ MPI_Init(&argc,&argv); int rank; MPI_Comm_rank(MPI_COMM_WORLD,&rank);
  int iters=argc>1?atoi(argv[1]):30;
  bench(1,iters,rank,"allreduce_small");
  bench(271102,iters,rank,"allreduce_1.08MB");
  MPI_Finalize(); return 0; }
